"""``manage.py gateway_setup SPEC.json``: users and applications for the tests (created or updated).

SPEC: {"users": [{"username", "password", "email", "groups": [...]}],
       "clients": [{"client_id", "client_secret", "grant": "authorization-code" | "client-credentials",
                    "redirect_uris": [...], "post_logout_redirect_uris": [...]}]}
"""

import json
from pathlib import Path
from typing import Any

from django.contrib.auth.models import Group, User
from django.core.management.base import BaseCommand
from oauth2_provider.models import get_application_model


class Command(BaseCommand):
    help = "Create or update the test users and applications"

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("spec")

    def handle(self, *args: Any, **options: Any) -> None:
        spec = json.loads(Path(options["spec"]).read_text())
        for entry in spec.get("users", []):
            user, _ = User.objects.get_or_create(username=entry["username"])
            user.email = entry.get("email", f"{entry['username']}@example.test")
            user.set_password(entry["password"])
            user.save()
            for name in entry.get("groups", []):
                user.groups.add(Group.objects.get_or_create(name=name)[0])
        application_model = get_application_model()
        for entry in spec.get("clients", []):
            application_model.objects.filter(client_id=entry["client_id"]).delete()
            application_model.objects.create(
                name=entry["client_id"],
                client_id=entry["client_id"],
                client_secret=entry["client_secret"],
                client_type="confidential",
                authorization_grant_type=entry.get("grant", "authorization-code"),
                redirect_uris=" ".join(entry.get("redirect_uris", [])),
                post_logout_redirect_uris=" ".join(entry.get("post_logout_redirect_uris", [])),
                skip_authorization=True,
                algorithm="RS256",
            )
