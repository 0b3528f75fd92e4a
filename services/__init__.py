"""domed's services: router, executor, projector; plus the shared runtime and catalogue."""
