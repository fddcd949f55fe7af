"""Alembic migrations of the DNSBL store (a package, so they ship in the wheel).

`Store` runs them on open (store.py `migrate`); there is no alembic.ini. A new revision is a
file in versions/ written by hand after the pattern of 0001 (down_revision = the previous one),
beside the matching change to the models in store.py; tests/test_dnsbl_store.py checks that the
migrated schema and the models agree.
"""
