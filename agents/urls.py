from django.urls import path

from agents import policy_views, views

app_name = "agents"
urlpatterns = [
    path("workflows/", views.workflows, name="workflows"),
    path("workflows/<slug:slug>/", views.workflow_detail, name="workflow_detail"),
    path("workflows/<slug:slug>/promote/", views.workflow_promote, name="workflow_promote"),
    path("workflows/<slug:slug>/demote/", views.workflow_demote, name="workflow_demote"),
    path("workflows/<slug:slug>/requalify/", views.workflow_requalify,
         name="workflow_requalify"),
    path("workflows/<slug:slug>/policy/", policy_views.policy, name="policy"),
]
