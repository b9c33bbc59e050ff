"""`python -m featcache.cli`."""
from featcache.cli import main

main()
