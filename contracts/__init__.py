"""domed's wire contract: subjects, events, API messages, error codes, manifest model.

Pure data. Nothing here performs I/O or imports a service; every service imports
its message shapes from here and declares none of its own.
"""
