"""`python -m onnx_obc ...` works like the installed `onnx-obc` command."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="onnx-obc")
