"""The site store on PostgreSQL: one server for several workstations and AI workers.

- :mod:`.cluster`: a PostgreSQL cluster in a folder (initdb, pg_ctl), its database and
  roles (``mt_admin`` owner, ``mt_workstation``, ``mt_worker``), connection strings.
- :mod:`.schema`: the versioned migrations of the site database.
- :mod:`.events`: the correction chain, extended by the server.
- :mod:`.buffer`: a workstation's local buffer for events made while the server is away.

Standalone mode never imports this package's server parts; psycopg is only needed here.
"""
