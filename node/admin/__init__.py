"""The admin interface: ``cxrnode audit`` (list, show, stats, verify) and the read-only,
token-protected HTTP API and HTML page served inside ``cxrnode serve``. Both answer from
``storage.audit``, ``storage.audit_chain`` and ``storage.queries``; every query of patient data
is itself audited (``admin.query``)."""
