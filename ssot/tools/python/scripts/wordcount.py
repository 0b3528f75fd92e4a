"""Count words in the given arguments and print the total."""

import sys

print(sum(len(a.split()) for a in sys.argv[1:]))
