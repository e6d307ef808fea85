"""The django-oauth-toolkit provider the gateway's tests start (tests/oidc/providers.py): ``manage.py``."""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dotproject.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
