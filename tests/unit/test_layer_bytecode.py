"""The layer build's bytecode check: a module without its .pyc is reported, so a change of build method
cannot quietly bring back a compile of every module on every cold start."""

import compileall
import py_compile

import pytest

from scripts.check_layer_bytecode import main, missing_bytecode

pytestmark = pytest.mark.unit


def test_a_module_without_bytecode_is_reported_until_the_layer_is_compiled(tmp_path):
    package = tmp_path / "state_core"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "store.py").write_text("VALUE = 1\n")
    assert [path.name for path in missing_bytecode(tmp_path)] == ["__init__.py", "store.py"]
    assert main(["check", str(tmp_path)]) == 1

    compileall.compile_dir(tmp_path, quiet=1, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    assert missing_bytecode(tmp_path) == []
    assert main(["check", str(tmp_path)]) == 0


def test_a_directory_that_is_not_the_layer_is_refused(tmp_path):
    assert main(["check", str(tmp_path)]) == 2
