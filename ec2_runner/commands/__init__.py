"""``aipm``'s operator commands, one module per group; each has ``register(sub)`` that adds its
sub-commands to the parser (``ec2_runner.cli.build_parser``)."""
