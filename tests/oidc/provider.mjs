// A real OpenID Connect provider for the tests (tests/test_auth_oidc.py), built on oidc-provider.
//
//   node provider.mjs CONFIG.json
//
// CONFIG.json: {"port": 7455, "keys": {"keys": [private JWKs, each with a kid]}, "audience": "...",
//               "alg": "RS256", "clients": [{"client_id", "client_secret", "tenant", "roles", "groups"}]}
// The issuer is http://127.0.0.1:PORT. Clients use the client_credentials grant (no browser) and get
// JWT access tokens for the audience, with the client's tenant, roles and groups as claims.
// Rotating keys: start it again on the same port with another "keys" set (the issuer stays the same).
import { readFileSync } from 'node:fs';

import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const port = Number(config.port);
const issuer = `http://127.0.0.1:${port}`;
const audience = config.audience;
const byId = new Map(config.clients.map((client) => [client.client_id, client]));

const provider = new Provider(issuer, {
  jwks: config.keys,
  clients: config.clients.map((client) => ({
    client_id: client.client_id,
    client_secret: client.client_secret,
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    token_endpoint_auth_method: 'client_secret_basic',
    scope: 'api',
  })),
  scopes: ['api'],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: false },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => audience,
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: 'api',
        audience,
        accessTokenTTL: 300,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: config.alg || 'RS256' } },
      }),
    },
  },
  extraTokenClaims(ctx, token) {
    const client = byId.get(token.clientId);
    if (!client) return undefined;
    return { tenant: client.tenant, roles: client.roles || [], groups: client.groups || [] };
  },
});
provider.proxy = false;

const server = provider.listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider listening on ${issuer}`);
});
const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
