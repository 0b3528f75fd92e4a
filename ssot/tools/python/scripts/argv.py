"""Print each argument on its own line, as JSON, so callers can see exactly what arrived."""

import json
import sys

for arg in sys.argv[1:]:
    print(json.dumps(arg))
