"""The exception tree: one root, every public class exported and drawn in the module docstring."""

from __future__ import annotations

import inspect

import assay.errors as errors


def test_every_exception_is_exported_documented_and_under_assay_error():
    classes = {n: c for n, c in vars(errors).items()
               if inspect.isclass(c) and issubclass(c, BaseException) and c.__module__ == errors.__name__}
    assert set(classes) <= set(errors.__all__), set(classes) - set(errors.__all__)
    for name, cls in classes.items():
        assert issubclass(cls, errors.AssayError), name
        assert name in errors.__doc__, f"{name} is missing from the tree in assay.errors' docstring"
    for name in errors.__all__:
        assert hasattr(errors, name), name
    assert len(errors.__all__) == len(set(errors.__all__))


def test_errors_keep_their_standard_bases():
    assert issubclass(errors.InputError, ValueError)
    assert issubclass(errors.NotFoundError, LookupError)
    assert issubclass(errors.MissingDependencyError, ImportError)
    assert issubclass(errors.DamagedStoreError, errors.WorkspaceError)
