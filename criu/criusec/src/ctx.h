/*
 * A checkpoint's key context and its cipher.img header: the master key,
 * checkpoint id, optional parent (id and binding), AEAD, chunk size,
 * recipient stanzas, and in format 2 the time, the manifest's digest and
 * the signature, with the header MAC that binds them together.
 */
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "aead.h"
#include "compress.h"
#include "criusec.h"
#include "kdf.h"
#include "pki.h"
#include "secure_bytes.h"
#include "sign.h"
#include "status.h"

namespace criusec {

constexpr uint32_t kFormatVersion = CRIUSEC_FORMAT_VERSION; /* what is written */
constexpr uint32_t kFormatVersion1 = 1;
constexpr size_t kIdLen = CRIUSEC_ID_LEN;
constexpr size_t kMacLen = CRIUSEC_MAC_LEN;
constexpr size_t kMasterKeyLen = 32;
constexpr uint32_t kDefaultChunkSize = 65536;
constexpr uint32_t kMinChunkSize = 4096;
constexpr uint32_t kMaxChunkSize = 1u << 20;
/* Sanity bounds on an imported header (far above any real use). */
constexpr size_t kMaxRecipients = 1024;
constexpr size_t kMaxWrappedLen = 16384;

static_assert(kFprLen == CRIUSEC_FPR_LEN);

using Id = std::array<uint8_t, kIdLen>;
using Mac = std::array<uint8_t, kMacLen>;

/* HKDF info strings (see Documentation/criusec-format.md). */
inline constexpr std::string_view kInfoHeaderMac = "criusec v1 header mac";
inline constexpr std::string_view kInfoStream = "criusec v1 stream";
inline constexpr std::string_view kInfoPagesXts = "criusec v1 pages xts";
inline constexpr std::string_view kInfoChildBinding = "criusec v1 child binding";

bool valid_chunk_size(uint32_t chunk_size) noexcept;

struct Recipient {
	Fingerprint fpr{};
	uint32_t wrap_alg = CRIUSEC_WRAP_RSA_PKCS1V15;
	std::vector<uint8_t> wrapped;
};

/* A non-owning view of one stanza, e.g. over a struct criusec_recipient. */
struct RecipientView {
	std::span<const uint8_t, kFprLen> fpr;
	uint32_t wrap_alg;
	std::span<const uint8_t> wrapped;
};

/*
 * The header as read back from cipher.img, before anything is trusted.
 * The format-2 fields are zero/empty in a version-1 header.
 */
struct HeaderView {
	uint32_t version = 0;
	Id ckpt_id{};
	std::optional<Id> parent;
	Mac parent_binding{}; /* format 2, with parent */
	uint32_t aead = 0;
	uint32_t chunk_size = 0;
	uint32_t compress = 0; /* format 2 */
	uint64_t created = 0;
	Digest manifest_digest{};
	std::vector<RecipientView> recipients;
	uint32_t sig_alg = 0;
	std::vector<std::span<const uint8_t>> signer_certs;
	std::span<const uint8_t> signature;
	Mac mac{};
};

/*
 * The structural checks a reader makes before anything else (format
 * sections 3.4 steps 1-4 and 10.1): version, AEAD, chunk size, bounds,
 * and no format-2 field in a version-1 header.
 */
[[nodiscard]] Status check_structure(const HeaderView &hdr);

/* The byte string the signature covers (format 2), or the MAC (format 1). */
std::vector<uint8_t> canonical_header(const HeaderView &hdr);
/* The byte string the MAC covers: canonical, then the signature in format 2. */
std::vector<uint8_t> mac_input(const HeaderView &hdr);

class Ctx {
public:
	/* Dump side: fresh random master key and checkpoint id. */
	[[nodiscard]] static Result<Ctx> create(AeadAlg aead, uint32_t chunk_size = kDefaultChunkSize);
	/* From known material: used by import, and by tests and fuzzers for determinism. */
	[[nodiscard]] static Result<Ctx> from_master_key(std::span<const uint8_t> mk, const Id &id, AeadAlg aead,
							 uint32_t chunk_size);
	/*
	 * Restore side: pick the stanza of priv's key (RSA; a file's or a
	 * token's), unwrap the master key and verify the header MAC before
	 * returning anything.  (The signature and the policy are
	 * check_header()'s, before this.)
	 */
	[[nodiscard]] static Result<Ctx> import(const HeaderView &hdr, const PrivKey &priv);
	/*
	 * The same from a checkpoint's chain secret (its PRK, chain_secret())
	 * instead of a recipient's key: how a dump reads a parent this host
	 * made but cannot unwrap.  The header MAC is checked the same way.
	 */
	[[nodiscard]] static Result<Ctx> import_secret(const HeaderView &hdr, std::span<const uint8_t> secret);
	/* What import_secret() needs: as secret as the checkpoint. */
	std::span<const uint8_t> chain_secret() const noexcept { return prk_.span(); }

	/* Dump: compress streams and page regions (format 2); before any image is sealed. */
	[[nodiscard]] Status set_compress(CompressAlg alg);
	/*
	 * Wrap the master key for the RSA key of a PEM certificate, which must
	 * be valid at now and allowed to encipher keys, unless unchecked.
	 */
	[[nodiscard]] Status add_recipient(std::span<const uint8_t> cert_pem, uint64_t now, bool unchecked = false);
	/* This checkpoint is an increment over parent: its id and the binding (format 10.5). */
	[[nodiscard]] Status set_parent(const Ctx &parent);
	/* Restore: parent is the one this checkpoint was dumped over. */
	[[nodiscard]] Status check_parent(const Ctx &parent) const;

	/*
	 * Complete a format-2 header: created, the manifest's digest, the
	 * signature (signer may be null) and the MAC.  May be called again
	 * (a new signature each time).
	 */
	[[nodiscard]] Status seal_header(Signer *signer, const Digest &manifest_digest, uint64_t created);
	bool sealed() const noexcept { return sealed_; }
	/* The sealed (or imported) header; views into this context. */
	HeaderView header() const;

	/* The MAC this context's key gives a header's fields (hdr.mac is ignored). */
	[[nodiscard]] Result<Mac> mac_over(const HeaderView &hdr) const;

	/* HKDF-Expand(PRK, info, len): every subkey comes from here. */
	[[nodiscard]] Result<SecureBytes> derive(std::span<const uint8_t> info, size_t len) const;

	const Id &id() const noexcept { return id_; }
	const std::optional<Id> &parent() const noexcept { return parent_; }
	uint32_t version() const noexcept { return version_; }
	const Digest &manifest_digest() const noexcept { return manifest_digest_; }
	AeadAlg aead() const noexcept { return aead_; }
	uint32_t chunk_size() const noexcept { return chunk_size_; }
	CompressAlg compress() const noexcept { return compress_; }
	const std::vector<Recipient> &recipients() const noexcept { return recipients_; }

private:
	Ctx() = default;
	std::vector<RecipientView> recipient_views() const;
	/* Check hdr's MAC under this key, then take its fields (import). */
	[[nodiscard]] Status adopt(const HeaderView &hdr);
	[[nodiscard]] Result<Mac> binding_for(const Id &child) const;

	SecureBytes mk_;
	SecureBytes prk_; /* HKDF-Extract(salt = id, IKM = mk) */
	Id id_{};
	std::optional<Id> parent_;
	Mac parent_binding_{};
	AeadAlg aead_ = AeadAlg::Aes256Gcm;
	uint32_t chunk_size_ = kDefaultChunkSize;
	CompressAlg compress_ = CompressAlg::None;
	std::vector<Recipient> recipients_;
	/* The header as sealed or imported. */
	uint32_t version_ = kFormatVersion;
	bool sealed_ = false;
	uint64_t created_ = 0;
	Digest manifest_digest_{};
	SigAlg sig_alg_ = SigAlg::None;
	std::vector<Der> signer_certs_;
	std::vector<uint8_t> signature_;
	Mac mac_{};
};

} /* namespace criusec */
