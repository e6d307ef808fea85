"""Claims of the test users: ``sub`` is the user name (not the database id), plus name, email, groups."""

from typing import Any, ClassVar

from oauth2_provider.oauth2_validators import OAuth2Validator


class Validator(OAuth2Validator):  # type: ignore[misc]
    oidc_claim_scope: ClassVar[dict[str, str]] = {**OAuth2Validator.oidc_claim_scope, "groups": "groups",
                                                  "preferred_username": "profile"}

    def get_additional_claims(self, request: Any) -> dict[str, Any]:
        user = request.user
        return {"name": user.get_full_name() or user.username, "preferred_username": user.username,
                "email": user.email, "email_verified": True,
                "groups": sorted(group.name for group in user.groups.all())}

    def get_claim_dict(self, request: Any) -> dict[str, Any]:
        claims: dict[str, Any] = super().get_claim_dict(request)
        claims["sub"] = request.user.username
        return claims
