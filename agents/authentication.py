from __future__ import annotations

from django.http import HttpRequest
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from agents.models import Agent, hash_token


class AgentTokenAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer gh_...`: the agent is the request's user."""

    keyword = "Bearer"

    def authenticate(self, request: HttpRequest) -> tuple[Agent, str] | None:
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Authorization header must be 'Bearer <token>'.")
        try:
            raw = header[1].decode()
        except UnicodeError as exc:
            raise exceptions.AuthenticationFailed("Token contains invalid characters.") from exc
        agent = Agent.objects.filter(token_hash=hash_token(raw)).first()
        if agent is None or not agent.is_active:
            raise exceptions.AuthenticationFailed("Invalid or inactive agent token.")
        return agent, raw

    def authenticate_header(self, request: HttpRequest) -> str:
        return self.keyword


class AgentTokenScheme(OpenApiAuthenticationExtension):
    """Declares the agent token in the OpenAPI schema (Swagger's Authorize button, and
    drf-spectacular's W001 warning, which `check --deploy --fail-level WARNING` fails on)."""

    target_class = AgentTokenAuthentication
    name = "agentToken"

    def get_security_definition(self, auto_schema: object) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "bearerFormat": "gh_...",
                "description": "Per-agent token, shown once when the agent is created."}
