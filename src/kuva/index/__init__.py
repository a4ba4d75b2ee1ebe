"""The index: SQLAlchemy schema, repositories, unit of work, migrations."""
