"""What every ``shopcardd-*`` command shares: the console-script entry points, argument
parsing, the one log schema, reading the backend's answers.

It is in the base distribution, beside the voucher format, so a counter installs it too. It
may use ``shopcardd_voucher`` but no part's package (device, backend, provisioning, bench):
the launcher imports a part only by name, once that part's libraries are installed.
"""
