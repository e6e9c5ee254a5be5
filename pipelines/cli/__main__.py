"""``python -m millrace.pipelines.cli``: the same entry point as the ``millrace`` script."""
from millrace.pipelines.cli import main

if __name__ == "__main__":  # importing this module (e.g. to list modules) must not run the CLI
    main()
