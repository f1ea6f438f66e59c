"""``python -m erasure``: the same as the ``erasure`` command."""

from erasure.cli import main

main()
