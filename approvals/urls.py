from django.urls import path

from approvals import views

app_name = "approvals"
urlpatterns = [
    path("queue/", views.queue, name="queue"),
    path("queue/<int:pk>/", views.detail, name="detail"),
    path("queue/<int:pk>/<str:action>/", views.decide, name="decide"),
    path("break-glass/", views.break_glass, name="break_glass"),
]
