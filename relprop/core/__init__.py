"""The engine core: the IR (graph), rules and composites, the compiled plan, the two passes, backends."""
