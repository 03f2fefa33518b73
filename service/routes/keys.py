"""GET /v1/keys: the public keys that verify receipts, served states and artifact manifests (JWKS-like)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from service.deps import AnyRole
from unlearnd.security.signing import Signer

router = APIRouter(prefix="/v1", tags=["keys"])


class PublicKey(BaseModel):
    kty: str = Field("OKP", description="Key type (RFC 8037): OKP.")
    crv: str = Field("Ed25519", description="Curve: Ed25519.")
    kid: str = Field(..., description="Key id: the RFC 7638 thumbprint of the key; receipts name it in "
                                      "signature.key_id.")
    x: str = Field(..., description="The public key, base64url (32 bytes).")
    use: str = Field("sig", description="Signatures.")


class PublicKeys(BaseModel):
    keys: list[PublicKey] = Field(..., description="The current signing key first, then retired keys that "
                                                   "still verify what they signed.")


@router.get("/keys")
def public_keys(request: Request, _: AnyRole) -> PublicKeys:
    """The server's Ed25519 public keys with their key ids. Save the answer to a file and check a receipt
    offline with `unlearnd verify-receipt receipt.json --public-key keys.json`."""
    signer: Signer = request.app.state.signer
    return PublicKeys(**signer.jwks())
