"""`compress`, the package: its public names are listed (dir, help, tab completion, `import *`) and
imported only when used."""

import subprocess
import sys

import pytest

import compress

PUBLIC = {"load_teacher", "save_compressed", "load_transformer", "load_pipeline", "merge_lora", "LowRankLinear"}


def test_the_public_names_are_listed():
    """dir(compress) showed none of them (they came from a module __getattr__ alone)."""
    assert set(compress.__all__) == PUBLIC and PUBLIC <= set(dir(compress))
    assert all(callable(getattr(compress, name)) for name in PUBLIC)


def test_a_name_it_lacks_is_pythons_attribute_error():
    """compress.nope raised AttributeError('nope'), not Python's words."""
    with pytest.raises(AttributeError, match=r"^module 'compress' has no attribute 'nope'$"):
        compress.nope  # noqa: B018


def test_import_compress_imports_no_torch():
    code = "import sys, compress; dir(compress); compress.__all__; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
