"""``python -m stepline`` is the ``stepline`` command."""

from stepline._cli import main

main()
