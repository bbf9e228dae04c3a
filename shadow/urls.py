from django.urls import path

from shadow import views

app_name = "shadow"
urlpatterns = [
    path("datasets/", views.datasets, name="datasets"),
    path("datasets/new/", views.dataset_new, name="dataset_new"),
    path("datasets/<int:pk>/", views.dataset_detail, name="dataset"),
    path("datasets/<int:pk>/versions/", views.version_new, name="version_new"),
    path("datasets/versions/<int:pk>/export/", views.export_new, name="export_new"),
    path("exports/<int:pk>/progress/", views.export_progress, name="export_progress"),
    path("exports/<int:pk>/download/", views.export_download, name="export_download"),
    path("shadow/", views.index, name="index"),
    path("shadow/<slug:slug>/", views.comparisons, name="comparisons"),
    path("shadow/<slug:slug>/outcomes/new/", views.outcome_new, name="outcome_new"),
    path("shadow/<slug:slug>/outcomes/upload/", views.outcome_upload, name="outcome_upload"),
]
