"""Sources and sinks behind one interface each (DESIGN.md §7): TCP sources
and sinks, the resumable source and sink protocols, and the channels
between workers.  A connector moves bytes and positions; it never runs user
code, and it imports nothing from the engine (``wallaroo.runtime``), which
drives it through the interfaces in ``base``."""
