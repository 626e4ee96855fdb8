/*
 * RAII owners for GnuTLS objects, so that no error path leaks a handle or
 * leaves key material in a GnuTLS-allocated buffer.
 */
#pragma once

#include <string>
#include <utility>

#include <gnutls/abstract.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include "status.h"

namespace criusec {

/* Owns a GnuTLS handle T released by Deinit. */
template <typename T, auto Deinit> class Handle {
public:
	Handle() noexcept = default;
	Handle(const Handle &) = delete;
	Handle &operator=(const Handle &) = delete;
	Handle(Handle &&o) noexcept : h_(std::exchange(o.h_, nullptr)) {}
	Handle &operator=(Handle &&o) noexcept
	{
		if (this != &o) {
			reset();
			h_ = std::exchange(o.h_, nullptr);
		}
		return *this;
	}
	~Handle() { reset(); }

	T get() const noexcept { return h_; }
	/* For gnutls_*_init(&h): the old handle, if any, is released first. */
	T *out() noexcept
	{
		reset();
		return &h_;
	}
	explicit operator bool() const noexcept { return h_ != nullptr; }
	/* Hand the handle to GnuTLS (e.g. a trust list that takes ownership). */
	T release() noexcept { return std::exchange(h_, nullptr); }

	void reset() noexcept
	{
		if (h_)
			Deinit(h_);
		h_ = nullptr;
	}

private:
	T h_ = nullptr;
};

using AeadHandle = Handle<gnutls_aead_cipher_hd_t, gnutls_aead_cipher_deinit>;
using CipherHandle = Handle<gnutls_cipher_hd_t, gnutls_cipher_deinit>;
using PubKey = Handle<gnutls_pubkey_t, gnutls_pubkey_deinit>;
using PrivKey = Handle<gnutls_privkey_t, gnutls_privkey_deinit>;
using X509Crt = Handle<gnutls_x509_crt_t, gnutls_x509_crt_deinit>;
using X509PrivKey = Handle<gnutls_x509_privkey_t, gnutls_x509_privkey_deinit>;

/* A trust list owns the certificates added to it: release them with it. */
inline void trust_list_deinit_all(gnutls_x509_trust_list_t l) noexcept { gnutls_x509_trust_list_deinit(l, 1); }
using TrustList = Handle<gnutls_x509_trust_list_t, trust_list_deinit_all>;

/*
 * A gnutls_datum_t whose data GnuTLS allocated; freed with gnutls_free.
 * Wipe == true also zeroes it first (for anything that held a secret).
 */
template <bool Wipe> class BasicDatum {
public:
	BasicDatum() noexcept = default;
	BasicDatum(const BasicDatum &) = delete;
	BasicDatum &operator=(const BasicDatum &) = delete;
	~BasicDatum() { reset(); }

	gnutls_datum_t *out() noexcept
	{
		reset();
		return &d_;
	}
	const gnutls_datum_t &get() const noexcept { return d_; }
	const unsigned char *data() const noexcept { return d_.data; }
	size_t size() const noexcept { return d_.size; }

	void reset() noexcept
	{
		if (d_.data) {
			if (Wipe)
				gnutls_memset(d_.data, 0, d_.size);
			gnutls_free(d_.data);
		}
		d_.data = nullptr;
		d_.size = 0;
	}

private:
	gnutls_datum_t d_{nullptr, 0};
};

using Datum = BasicDatum<false>;
using SecretDatum = BasicDatum<true>;

/* A non-owning datum over caller memory (GnuTLS takes non-const pointers). */
inline gnutls_datum_t as_datum(const void *p, size_t n) noexcept
{
	return gnutls_datum_t{const_cast<unsigned char *>(static_cast<const unsigned char *>(p)),
			      static_cast<unsigned int>(n)};
}

/* Map a GnuTLS error code to a Status. */
inline Status gnutls_status(const char *what, int rc)
{
	int err = rc == GNUTLS_E_MEMORY_ERROR ? ENOMEM : EIO;
	return Status::error(err, std::string(what) + ": " + gnutls_strerror(rc));
}

} /* namespace criusec */
