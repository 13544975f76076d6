"""``python -m dataverse_emulator [options]``: same options as ``d365 emulator serve``."""

from .cli import serve

if __name__ == "__main__":
    serve()
