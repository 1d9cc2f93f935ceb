import os
import sys

# Test helpers (oracle, attention_cases) are imported as top-level modules.
sys.path.insert(0, os.path.dirname(__file__))
