"""The peer's only URLs: django-pyas2's (AS2 receive endpoint: /pyas2/as2receive)."""

from django.urls import include, path

urlpatterns = [path("pyas2/", include("pyas2.urls"))]
