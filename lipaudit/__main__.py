"""``python -m lipaudit`` runs the command line."""

from lipaudit.cli import main

if __name__ == "__main__":
    main()
