#include "ctx.h"

#include <algorithm>
#include <string>

#include "bytes.h"

namespace criusec {

namespace {

constexpr std::string_view kCanonicalTag = "criusec-header-v1";

Result<Mac> compute_mac(const SecureBytes &prk, std::span<const uint8_t> canonical)
{
	auto key = hkdf_expand(prk.span(), as_bytes(kInfoHeaderMac), kSha256Len);
	if (!key.ok())
		return std::move(key).status();
	Mac mac;
	CRIUSEC_TRY(hmac_sha256(key.value().span(), canonical, mac));
	return mac;
}

} /* namespace */

bool valid_chunk_size(uint32_t c) noexcept
{
	return c >= kMinChunkSize && c <= kMaxChunkSize && (c & (c - 1)) == 0;
}

std::vector<uint8_t> canonical_header(uint32_t version, const Id &ckpt_id, const std::optional<Id> &parent,
				      uint32_t aead, uint32_t chunk_size, std::span<const RecipientView> recipients)
{
	size_t len = kCanonicalTag.size() + 1 + 4 + kIdLen + 1 + kIdLen + 3 * 4;
	for (const auto &r : recipients)
		len += kFprLen + 8 + r.wrapped.size();
	std::vector<uint8_t> v;
	v.reserve(len); /* also keeps GCC 12's -Wstringop-overflow false positive away */
	put_str(v, kCanonicalTag);
	put_u8(v, 0);
	put_u32(v, version);
	put_bytes(v, ckpt_id);
	put_u8(v, parent ? 1 : 0);
	if (parent)
		put_bytes(v, *parent);
	put_u32(v, aead);
	put_u32(v, chunk_size);
	put_u32(v, static_cast<uint32_t>(recipients.size()));
	for (const auto &r : recipients) {
		put_bytes(v, r.fpr);
		put_u32(v, r.wrap_alg);
		put_u32(v, static_cast<uint32_t>(r.wrapped.size()));
		put_bytes(v, r.wrapped);
	}
	return v;
}

Result<Ctx> Ctx::create(AeadAlg aead, std::optional<Id> parent, uint32_t chunk_size)
{
	SecureBytes mk(kMasterKeyLen);
	CRIUSEC_TRY(random_bytes(mk.span()));
	Id id;
	CRIUSEC_TRY(random_bytes(id));
	return from_master_key(mk.span(), id, parent, aead, chunk_size);
}

Result<Ctx> Ctx::from_master_key(std::span<const uint8_t> mk, const Id &id, std::optional<Id> parent, AeadAlg aead,
				 uint32_t chunk_size)
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
	c.parent_ = parent;
	c.aead_ = aead;
	c.chunk_size_ = chunk_size;
	return c;
}

Status Ctx::add_recipient(std::span<const uint8_t> cert_pem)
{
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

Result<Mac> Ctx::header_mac() const
{
	if (recipients_.empty())
		return invalid_argument("no recipient added (a checkpoint nobody can decrypt)");
	auto views = recipient_views();
	auto canonical = canonical_header(kFormatVersion, id_, parent_, static_cast<uint32_t>(aead_), chunk_size_,
					  views);
	return compute_mac(prk_, canonical);
}

Result<Mac> Ctx::mac_over(const HeaderView &hdr) const
{
	auto canonical =
		canonical_header(hdr.version, hdr.ckpt_id, hdr.parent, hdr.aead, hdr.chunk_size, hdr.recipients);
	return compute_mac(prk_, canonical);
}

Result<SecureBytes> Ctx::derive(std::span<const uint8_t> info, size_t len) const
{
	return hkdf_expand(prk_.span(), info, len);
}

Result<Ctx> Ctx::import(const HeaderView &hdr, std::span<const uint8_t> key_pem)
{
	/* Structural checks first: they use nothing secret and give precise errors. */
	if (hdr.version != kFormatVersion)
		return unsupported("unsupported cipher.img header version " + std::to_string(hdr.version));
	auto aead = aead_from_wire(hdr.aead);
	if (!aead)
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

	auto priv = privkey_from_pem(key_pem);
	if (!priv.ok())
		return std::move(priv).status();
	auto pub = pubkey_from_privkey(priv.value());
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
	 * Implicit rejection: if the unwrap fails, carry on with a random key
	 * so that the only observable outcome is the MAC failure below.  A
	 * distinct "unwrap failed" error would be a PKCS#1 v1.5 padding oracle
	 * (Bleichenbacher) for anyone who can feed us headers.
	 */
	SecureBytes mk(kMasterKeyLen);
	if (!rsa_unwrap(priv.value(), mine->wrapped, mk.span()).ok())
		CRIUSEC_TRY(random_bytes(mk.span()));

	auto ctx = from_master_key(mk.span(), hdr.ckpt_id, hdr.parent, *aead, hdr.chunk_size);
	if (!ctx.ok())
		return ctx;
	auto mac = ctx.value().mac_over(hdr);
	if (!mac.ok())
		return std::move(mac).status();
	if (!ct_equal(mac.value(), hdr.mac))
		return bad_data("cipher.img header authentication failed (tampered header, or a wrapped key "
				"that does not decrypt)");

	/* Authentic: keep the stanzas so the header can be exported again unchanged. */
	for (const auto &r : hdr.recipients) {
		Recipient copy;
		std::copy(r.fpr.begin(), r.fpr.end(), copy.fpr.begin());
		copy.wrap_alg = r.wrap_alg;
		copy.wrapped.assign(r.wrapped.begin(), r.wrapped.end());
		ctx.value().recipients_.push_back(std::move(copy));
	}
	return ctx;
}

} /* namespace criusec */
