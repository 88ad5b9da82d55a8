"""`python -m gateway.cli ...` = `agent-gateway ...` (handy without the console script)."""

from gateway.cli import main

main()
