from django.urls import path

from approvals import api as approvals_api
from shadow import api as shadow_api

urlpatterns = [
    path("whoami/", approvals_api.whoami, name="api-whoami"),
    path("runs/", approvals_api.runs_create, name="api-runs"),
    path("runs/<int:pk>/", approvals_api.runs_detail, name="api-run-detail"),
    path("runs/<int:pk>/close/", approvals_api.runs_close, name="api-run-close"),
    path("proposals/", approvals_api.proposals, name="api-proposals"),
    path("proposals/<int:pk>/", approvals_api.proposal_detail, name="api-proposal-detail"),
    path("outcomes/", shadow_api.outcomes, name="api-outcomes"),
]
