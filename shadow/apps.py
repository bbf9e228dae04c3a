from django.apps import AppConfig


class ShadowConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "shadow"
