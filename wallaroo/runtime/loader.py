"""Loading an application: a ``.py`` file or an importable module, under a
stable module name so that pickled references to its classes resolve after a
restart, then ``application_setup(args)``."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import sys
import traceback
from types import ModuleType

from .._errors import WallarooParameterError
from .._kafka_cli import application_args
from .._spec import AppSpec


class ApplicationLoadError(Exception):
    """The application could not be found, imported or set up."""


def load_module(app: str) -> ModuleType:
    """``app`` is a path to a ``.py`` file (tried first) or a module name.

    A file is imported as the module named after its stem, with its
    directory on ``sys.path`` (as machida's ``--application-module`` did with
    PYTHONPATH), so ``examples/alphabet/alphabet.py`` is module ``alphabet``
    in every run: the name pickles refer to."""
    if app.endswith(".py") or os.path.sep in app or os.path.isfile(app):
        path = os.path.abspath(app)
        if os.path.isdir(path):
            found = sorted(f for f in os.listdir(path) if f.endswith(".py"))
            raise ApplicationLoadError(
                f"application {app!r} is a directory: give the application's "
                f".py file" + (f" (it holds {', '.join(found[:5])})" if found
                               else " (it holds no .py file)"))
        if not os.path.isfile(path):
            raise ApplicationLoadError(f"application file {app!r} does not exist")
        directory, filename = os.path.split(path)
        name = os.path.splitext(filename)[0]
        if not name.isidentifier():
            raise ApplicationLoadError(
                f"application file {app!r}: {name!r} is not a valid module "
                f"name; rename the file (letters, digits, underscores)")
        existing = sys.modules.get(name)
        if existing is not None:
            if os.path.abspath(getattr(existing, "__file__", "") or "") == path:
                return existing
            raise ApplicationLoadError(
                f"application file {app!r} would be imported as module "
                f"{name!r}, but that name is already taken by "
                f"{getattr(existing, '__file__', None) or existing!r}; rename "
                f"the file")
        if directory not in sys.path:
            sys.path.insert(0, directory)
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException as e:
            del sys.modules[name]
            raise ApplicationLoadError(
                f"importing application file {app!r} failed: "
                f"{type(e).__name__}: {e}{user_traceback(e)}") from e
        return module
    try:
        return importlib.import_module(app)
    except ImportError as e:
        raise ApplicationLoadError(
            f"cannot import application module {app!r}: {e} (pass a path to "
            f"a .py file, or put the module on PYTHONPATH)") from e


_ENGINE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def user_traceback(e: BaseException) -> str:
    """The frames of ``e``'s traceback outside the engine and importlib
    (the application's own: file, line, code), as lines to append to an
    error message; empty when there are none."""
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if not os.path.abspath(f.filename).startswith(_ENGINE + os.sep)
              and not f.filename.startswith("<frozen")]
    if not frames:
        return ""
    lines = ["", "  the application's traceback (most recent call last):"]
    for f in frames:
        lines.append(f'    File "{f.filename}", line {f.lineno}, in {f.name}')
        if f.line:
            lines.append(f"      {f.line.strip()}")
    return "\n".join(lines)


def load_application(app: str, args: list[str]) -> AppSpec:
    """Import ``app`` and return what its ``application_setup(args)``
    builds.  While it runs, ``args`` are also where the builder reads the
    ``--<name>_*`` flags of DefaultKafkaSourceCLIParser and
    DefaultKafkaSinkCLIParser."""
    module = load_module(app)
    setup = getattr(module, "application_setup", None)
    if not callable(setup):
        raise ApplicationLoadError(
            f"application {app!r} has no application_setup(args) function")
    try:
        # DefaultKafkaSourceCLIParser / DefaultKafkaSinkCLIParser read their
        # flags from these same args while the application is built.
        with application_args(args):
            spec = setup(list(args))
    except WallarooParameterError:
        raise
    except Exception as e:
        raise ApplicationLoadError(
            f"application_setup(args) of {app!r} raised {type(e).__name__}: "
            f"{e}{user_traceback(e)}") from e
    if not isinstance(spec, AppSpec):
        raise ApplicationLoadError(
            f"application_setup(args) of {app!r} returned {spec!r:.100}; it "
            f"must return ApplicationBuilder(...).build()")
    ser, de = getattr(module, "serialize", None), getattr(module, "deserialize", None)
    if callable(ser) and callable(de):  # Wallaroo's inter-worker contract
        spec = dataclasses.replace(spec, serializer=(ser, de))
    return spec
