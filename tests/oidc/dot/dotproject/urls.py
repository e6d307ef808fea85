"""Routes: the provider under /o/, RFC 8414 metadata at the root, Django's login form."""

from django.contrib.auth import views as auth_views
from django.urls import include, path
from oauth2_provider import urls as oauth2_urls

urlpatterns = [
    path("o/", include("oauth2_provider.urls", namespace="oauth2_provider")),
    path("", include((oauth2_urls.metadata_urlpatterns, "metadata"))),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
]
