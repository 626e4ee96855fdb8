#include "ctx.h"

#include <algorithm>
#include <string>

#include "bytes.h"

namespace criusec {

namespace {

constexpr std::string_view kCanonicalTag1 = "criusec-header-v1";
constexpr std::string_view kCanonicalTag2 = "criusec-header-v2";
constexpr std::string_view kBindingTag = "criusec-child-v1";

Result<Mac> compute_mac(const SecureBytes &prk, std::span<const uint8_t> input)
{
	auto key = hkdf_expand(prk.span(), as_bytes(kInfoHeaderMac), kSha256Len);
	if (!key.ok())
		return std::move(key).status();
	Mac mac;
	CRIUSEC_TRY(hmac_sha256(key.value().span(), input, mac));
	return mac;
}

} /* namespace */

bool valid_chunk_size(uint32_t c) noexcept
{
	return c >= kMinChunkSize && c <= kMaxChunkSize && (c & (c - 1)) == 0;
}

Status check_structure(const HeaderView &hdr)
{
	if (hdr.version != kFormatVersion1 && hdr.version != kFormatVersion)
		return unsupported("unsupported cipher.img header version " + std::to_string(hdr.version));
	if (!aead_from_wire(hdr.aead))
		return unsupported("unknown AEAD " + std::to_string(hdr.aead) + " in cipher.img header");
	if (!valid_chunk_size(hdr.chunk_size))
		return bad_data("invalid chunk size " + std::to_string(hdr.chunk_size) +
				" (must be a power of two in [4096, 1048576])");
	if (hdr.recipients.empty())
		return bad_data("cipher.img header has no recipient");
	if (hdr.recipients.size() > kMaxRecipients)
		return bad_data("cipher.img header has too many recipients");
	for (const auto &r : hdr.recipients)
		if (r.wrapped.empty() || r.wrapped.size() > kMaxWrappedLen)
			return bad_data("invalid wrapped key length " + std::to_string(r.wrapped.size()));
	if (!compress_from_wire(hdr.compress))
		return unsupported("unknown compression " + std::to_string(hdr.compress) + " in cipher.img header");
	if (hdr.version == kFormatVersion1) {
		/* Format 1 has none of these; a v1 header carrying them is not one. */
		if (hdr.sig_alg || !hdr.signer_certs.empty() || !hdr.signature.empty() || hdr.created || hdr.compress)
			return bad_data("cipher.img: a version-1 header with format-2 fields");
		return {};
	}
	if (hdr.sig_alg == 0) {
		if (!hdr.signer_certs.empty() || !hdr.signature.empty())
			return bad_data("cipher.img: an unsigned header with a signature or signer certificates");
		return {};
	}
	if (!sig_alg_from_wire(hdr.sig_alg))
		return unsupported("unknown signature algorithm " + std::to_string(hdr.sig_alg) +
				   " in cipher.img header");
	if (hdr.signer_certs.empty() || hdr.signer_certs.size() > kMaxSignerCerts)
		return bad_data("cipher.img: a signed header needs 1.." + std::to_string(kMaxSignerCerts) +
				" signer certificates");
	for (const auto &c : hdr.signer_certs)
		if (c.empty() || c.size() > kMaxCertLen)
			return bad_data("cipher.img: invalid signer certificate length " + std::to_string(c.size()));
	if (hdr.signature.empty() || hdr.signature.size() > kMaxSignatureLen)
		return bad_data("cipher.img: invalid signature length " + std::to_string(hdr.signature.size()));
	return {};
}

std::vector<uint8_t> canonical_header(const HeaderView &h)
{
	const bool v2 = h.version != kFormatVersion1;
	size_t len = kCanonicalTag2.size() + 1 + 4 + kIdLen + 8 + 1 + kIdLen + kMacLen + 3 * 4 + kSha256Len + 4 +
		     4 + 4;
	for (const auto &r : h.recipients)
		len += kFprLen + 8 + r.wrapped.size();
	for (const auto &c : h.signer_certs)
		len += 4 + c.size();
	std::vector<uint8_t> v;
	v.reserve(len); /* also keeps GCC 12's -Wstringop-overflow false positive away */
	put_str(v, v2 ? kCanonicalTag2 : kCanonicalTag1);
	put_u8(v, 0);
	put_u32(v, h.version);
	put_bytes(v, h.ckpt_id);
	if (v2)
		put_u64(v, h.created);
	put_u8(v, h.parent ? 1 : 0);
	if (h.parent) {
		put_bytes(v, *h.parent);
		if (v2)
			put_bytes(v, h.parent_binding);
	}
	put_u32(v, h.aead);
	put_u32(v, h.chunk_size);
	if (v2) {
		put_u32(v, h.compress);
		put_bytes(v, h.manifest_digest);
	}
	put_u32(v, static_cast<uint32_t>(h.recipients.size()));
	for (const auto &r : h.recipients) {
		put_bytes(v, r.fpr);
		put_u32(v, r.wrap_alg);
		put_u32(v, static_cast<uint32_t>(r.wrapped.size()));
		put_bytes(v, r.wrapped);
	}
	if (v2) {
		put_u32(v, h.sig_alg);
		put_u32(v, static_cast<uint32_t>(h.signer_certs.size()));
		for (const auto &c : h.signer_certs) {
			put_u32(v, static_cast<uint32_t>(c.size()));
			put_bytes(v, c);
		}
	}
	return v;
}

std::vector<uint8_t> mac_input(const HeaderView &h)
{
	auto v = canonical_header(h);
	if (h.version != kFormatVersion1) {
		put_u32(v, static_cast<uint32_t>(h.signature.size()));
		put_bytes(v, h.signature);
	}
	return v;
}

Result<Ctx> Ctx::create(AeadAlg aead, uint32_t chunk_size)
{
	SecureBytes mk(kMasterKeyLen);
	CRIUSEC_TRY(random_bytes(mk.span()));
	Id id;
	CRIUSEC_TRY(random_bytes(id));
	return from_master_key(mk.span(), id, aead, chunk_size);
}

Result<Ctx> Ctx::from_master_key(std::span<const uint8_t> mk, const Id &id, AeadAlg aead, uint32_t chunk_size)
{
	if (mk.size() != kMasterKeyLen)
		return invalid_argument("master key must be 32 bytes");
	if (!valid_chunk_size(chunk_size))
		return invalid_argument("invalid chunk size " + std::to_string(chunk_size));
	auto prk = hkdf_extract(id, mk);
	if (!prk.ok())
		return std::move(prk).status();
	Ctx c;
	c.mk_ = SecureBytes(mk);
	c.prk_ = std::move(prk).value();
	c.id_ = id;
	c.aead_ = aead;
	c.chunk_size_ = chunk_size;
	return c;
}

Status Ctx::add_recipient(std::span<const uint8_t> cert_pem, uint64_t now, bool unchecked)
{
	if (!unchecked) {
		auto crt = crt_import(cert_pem, GNUTLS_X509_FMT_PEM, EINVAL);
		if (!crt.ok())
			return std::move(crt).status();
		auto der = crt_der(crt.value().get());
		if (!der.ok())
			return std::move(der).status();
		CRIUSEC_TRY(check_cert_use(der.value(), now, CertUse::Encipher));
	}
	auto pub = pubkey_from_cert_pem(cert_pem);
	if (!pub.ok())
		return std::move(pub).status();
	auto fpr = fingerprint(pub.value());
	if (!fpr.ok())
		return std::move(fpr).status();
	for (const auto &r : recipients_)
		if (r.fpr == fpr.value())
			return Status::error(EEXIST, "recipient already added");
	if (recipients_.size() >= kMaxRecipients)
		return invalid_argument("too many recipients");
	if (sealed_)
		return invalid_argument("the header is already sealed");
	auto wrapped = rsa_wrap(pub.value(), mk_.span());
	if (!wrapped.ok())
		return std::move(wrapped).status();

	Recipient r;
	r.fpr = fpr.value();
	r.wrap_alg = CRIUSEC_WRAP_RSA_PKCS1V15;
	r.wrapped = std::move(wrapped).value();
	recipients_.push_back(std::move(r));
	return {};
}

std::vector<RecipientView> Ctx::recipient_views() const
{
	std::vector<RecipientView> views;
	views.reserve(recipients_.size());
	for (const auto &r : recipients_)
		views.push_back({r.fpr, r.wrap_alg, r.wrapped});
	return views;
}

Result<Mac> Ctx::binding_for(const Id &child) const
{
	auto key = derive(as_bytes(kInfoChildBinding), kMacLen);
	if (!key.ok())
		return std::move(key).status();
	std::vector<uint8_t> msg;
	msg.reserve(kBindingTag.size() + 1 + 2 * kIdLen);
	put_str(msg, kBindingTag);
	put_u8(msg, 0);
	put_bytes(msg, id_);
	put_bytes(msg, child);
	Mac mac;
	CRIUSEC_TRY(hmac_sha256(key.value().span(), msg, mac));
	return mac;
}

Status Ctx::set_compress(CompressAlg alg)
{
	if (sealed_)
		return invalid_argument("the header is already sealed");
	compress_ = alg;
	return {};
}

Status Ctx::set_parent(const Ctx &parent)
{
	if (sealed_)
		return invalid_argument("the header is already sealed");
	auto b = parent.binding_for(id_);
	if (!b.ok())
		return std::move(b).status();
	parent_ = parent.id();
	parent_binding_ = b.value();
	return {};
}

Status Ctx::check_parent(const Ctx &parent) const
{
	if (!parent_)
		return bad_data("the checkpoint has no parent, but parent images were given");
	if (parent.id() != *parent_)
		return bad_data("the parent images are not the checkpoint these images were dumped against "
				"(another checkpoint id)");
	if (version_ == kFormatVersion1)
		return bad_data("a version-1 checkpoint does not bind its parent: refusing to read its parent");
	auto b = parent.binding_for(id_);
	if (!b.ok())
		return std::move(b).status();
	if (!ct_equal(b.value(), parent_binding_))
		return bad_data("the parent images are not the checkpoint these images were dumped against "
				"(the parent binding does not verify)");
	return {};
}

Status Ctx::seal_header(Signer *signer, const Digest &manifest_digest, uint64_t created)
{
	if (recipients_.empty())
		return invalid_argument("no recipient added (a checkpoint nobody can decrypt)");
	version_ = kFormatVersion;
	created_ = created;
	manifest_digest_ = manifest_digest;
	sig_alg_ = signer ? signer->alg() : SigAlg::None;
	signer_certs_ = signer ? signer->chain() : std::vector<Der>{};
	signature_.clear();
	sealed_ = false;
	if (signer) {
		auto sig = signer->sign(canonical_header(header()));
		if (!sig.ok())
			return std::move(sig).status();
		signature_ = std::move(sig).value();
	}
	auto mac = compute_mac(prk_, mac_input(header()));
	if (!mac.ok())
		return std::move(mac).status();
	mac_ = mac.value();
	sealed_ = true;
	return {};
}

HeaderView Ctx::header() const
{
	HeaderView h;
	h.version = version_;
	h.ckpt_id = id_;
	h.parent = parent_;
	h.parent_binding = parent_binding_;
	h.aead = static_cast<uint32_t>(aead_);
	h.chunk_size = chunk_size_;
	h.compress = static_cast<uint32_t>(compress_);
	h.created = created_;
	h.manifest_digest = manifest_digest_;
	h.recipients = recipient_views();
	h.sig_alg = static_cast<uint32_t>(sig_alg_);
	for (const auto &c : signer_certs_)
		h.signer_certs.emplace_back(c);
	h.signature = signature_;
	h.mac = mac_;
	return h;
}

Result<Mac> Ctx::mac_over(const HeaderView &hdr) const
{
	return compute_mac(prk_, mac_input(hdr));
}

Result<SecureBytes> Ctx::derive(std::span<const uint8_t> info, size_t len) const
{
	return hkdf_expand(prk_.span(), info, len);
}

Result<Ctx> Ctx::import(const HeaderView &hdr, const PrivKey &priv)
{
	/* Structural checks first: they use nothing secret and give precise errors. */
	CRIUSEC_TRY(check_structure(hdr));
	auto aead = aead_from_wire(hdr.aead);

	CRIUSEC_TRY(require_rsa(priv));
	/* A token key's public half comes from the token; the private half never leaves it. */
	auto pub = pubkey_from_privkey(priv);
	if (!pub.ok())
		return std::move(pub).status();
	auto fpr = fingerprint(pub.value());
	if (!fpr.ok())
		return std::move(fpr).status();

	const RecipientView *mine = nullptr;
	for (const auto &r : hdr.recipients) {
		if (!std::equal(r.fpr.begin(), r.fpr.end(), fpr.value().begin()))
			continue;
		if (mine)
			return bad_data("duplicate recipient stanza for the private key");
		mine = &r;
	}
	if (!mine)
		return Status::error(ENOKEY, "no recipient stanza matches the private key");
	if (mine->wrap_alg != CRIUSEC_WRAP_RSA_PKCS1V15)
		return unsupported("unknown key wrap algorithm " + std::to_string(mine->wrap_alg));

	/*
	 * Implicit rejection: a wrapped key that does not unwrap gives a
	 * substitute key, so that the only observable outcome is the MAC
	 * failure below.  A distinct "unwrap failed" error, or a different
	 * path, would be a PKCS#1 v1.5 padding oracle (Bleichenbacher) for
	 * anyone who can feed us headers.
	 */
	SecureBytes mk(kMasterKeyLen);
	CRIUSEC_TRY(rsa_unwrap_implicit(priv, mine->wrapped, mk.span()));

	auto ctx = from_master_key(mk.span(), hdr.ckpt_id, *aead, hdr.chunk_size);
	if (!ctx.ok())
		return ctx;
	CRIUSEC_TRY(ctx.value().adopt(hdr));
	return ctx;
}

Result<Ctx> Ctx::import_secret(const HeaderView &hdr, std::span<const uint8_t> secret)
{
	CRIUSEC_TRY(check_structure(hdr));
	if (secret.size() != kSha256Len)
		return invalid_argument("a chain secret is 32 bytes");
	Ctx c;
	c.prk_ = SecureBytes(secret);
	c.id_ = hdr.ckpt_id;
	c.aead_ = *aead_from_wire(hdr.aead);
	c.chunk_size_ = hdr.chunk_size;
	CRIUSEC_TRY(c.adopt(hdr));
	return c;
}

Status Ctx::adopt(const HeaderView &hdr)
{
	auto mac = mac_over(hdr);
	if (!mac.ok())
		return std::move(mac).status();
	if (!ct_equal(mac.value(), hdr.mac))
		return bad_data("cipher.img header authentication failed (tampered header, or a wrapped key "
				"that does not decrypt)");

	/* Authentic: keep the header so that it can be exported again unchanged. */
	for (const auto &r : hdr.recipients) {
		Recipient copy;
		std::copy(r.fpr.begin(), r.fpr.end(), copy.fpr.begin());
		copy.wrap_alg = r.wrap_alg;
		copy.wrapped.assign(r.wrapped.begin(), r.wrapped.end());
		recipients_.push_back(std::move(copy));
	}
	version_ = hdr.version;
	parent_ = hdr.parent;
	parent_binding_ = hdr.parent_binding;
	created_ = hdr.created;
	compress_ = *compress_from_wire(hdr.compress);
	manifest_digest_ = hdr.manifest_digest;
	sig_alg_ = static_cast<SigAlg>(hdr.sig_alg);
	for (const auto &d : hdr.signer_certs)
		signer_certs_.emplace_back(d.begin(), d.end());
	signature_.assign(hdr.signature.begin(), hdr.signature.end());
	mac_ = hdr.mac;
	sealed_ = true;
	return {};
}

} /* namespace criusec */
