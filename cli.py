"""`python cli.py ...` works like the installed `onnx-obc` command."""

from onnx_obc.cli import main

if __name__ == "__main__":
    main()
