"""The user tools behind ``wallaroo send`` and ``wallaroo receive``.

``send`` writes messages to a source (plain Wallaroo framing, or the
resumable handshake of DESIGN.md §5); ``receive`` listens where sinks connect
and writes what arrives.  Neither imports the engine: they speak only the
wire formats, so they work against any worker, local or remote.
"""

from .common import ToolError as ToolError
