"""`python -m medagent.cli ...` (and `torchrun -m medagent.cli train ...`) run the `medagent` command."""

from medagent.cli.main import main

main()
