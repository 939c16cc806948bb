"""``python -m stepline`` is the ``stepline`` command."""

from stepline.cli import main

main()
