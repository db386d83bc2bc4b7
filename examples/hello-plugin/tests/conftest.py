import sys
from pathlib import Path

# run from a checkout without installing: put the package on the path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
