# domed's front door. `just --list` shows every recipe.

python := env_var_or_default("PYTHON", "python")

# run NATS (embedded) and the three services
up *ARGS:
    domed up {{ARGS}}

# the whole test suite (real nats-server, real processes)
test *ARGS: asyncapi-validator
    {{python}} -m pytest -q {{ARGS}}

# the official AsyncAPI parser the tests validate contracts/asyncapi.json with (npm)
asyncapi-validator:
    test -d devtools/asyncapi/node_modules/@asyncapi/parser || npm ci --prefix devtools/asyncapi --no-audit --no-fund

# format check, lint, types, layering
lint:
    ruff check contracts services domed tests bench setup.py
    ruff format --check contracts services domed tests bench setup.py
    mypy
    lint-imports

# format the code
fmt:
    ruff format contracts services domed tests bench setup.py
    ruff check --fix contracts services domed tests bench setup.py

# regenerate what the contract generates: contracts/schemas, contracts/asyncapi.json, docs/reference
schemas:
    {{python}} -m services.cli.generate

# the benchmarks (not part of the tests); QUICK=1 for a short run. Case 7 (Celery + Redis
# beside domed) needs `pip install -e '.[bench]'` and redis-server; it is skipped without them
bench *ARGS:
    {{python}} -m bench {{ARGS}}
