"""The custom provider of the issue, as a user would write it, in its own distribution."""

import google.auth.transport.requests
import google.oauth2.id_token

from kedro_vertex_hooks.auth import RequestHeaderProviderWithKedroContext


def obtain_token(audience: str) -> str:
    # Application Default Credentials; no caching: every request gets a fresh token.
    request = google.auth.transport.requests.Request()
    return google.oauth2.id_token.fetch_id_token(request, audience)


class MyCustomMLflowHeaderProvider(RequestHeaderProviderWithKedroContext):
    def in_context(self):
        return "my_auth_info" in self.params

    def request_headers(self):
        return {
            "Authorization": f"Bearer {obtain_token(self.params['audience'])}",
            "X-My-Custom-Header": self.params["my_auth_info"],
        }
