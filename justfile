# domed's front door. `just --list` shows every recipe.

python := env_var_or_default("PYTHON", "python")

# run NATS (embedded) and the three services
up *ARGS:
    domed up {{ARGS}}

# the whole test suite (real nats-server, real processes)
test *ARGS:
    {{python}} -m pytest -q {{ARGS}}

# format check, lint, types, layering
lint:
    ruff check contracts services tests bench
    ruff format --check contracts services tests bench
    mypy
    lint-imports

# format the code
fmt:
    ruff format contracts services tests bench
    ruff check --fix contracts services tests bench

# regenerate contracts/schemas from the types
schemas:
    {{python}} -m services.cli.schemas

# the benchmarks (not part of the tests); QUICK=1 for a short run
bench *ARGS:
    {{python}} -m bench {{ARGS}}
