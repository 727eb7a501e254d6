"""`python -m fedkeeper.cli`: the same as the `fedkeeper` command."""

from fedkeeper.cli.main import main

main()
