/*
 * A fixed RSA-2048 key and self-signed certificate for the fuzz targets and
 * their seed corpus, so that seeds stay valid across builds.
 * NOT A SECRET: published test material; never use it for anything else.
 */
#pragma once

inline const char kFuzzKeyPem[] =
	"-----BEGIN RSA PRIVATE KEY-----\n"
	"MIIEowIBAAKCAQEAwYe+cDRSUm7V/0K0RwtBH+/E3WhmfIRFENzORWbVgJDdYVXT\n"
	"rS9xFdse7m/R9RwR+e4m6sKWO7xsOuQVZSTb2bPpZyJgTmXeaTqYi1RdYf+u2x9X\n"
	"IBx5MxrmJ8yAQ2H6Lw8kyT4yrdpH7g9DLeIo5WY1oc9hixtn9ZML2Hi4sYgRaMdE\n"
	"ryhGPk6mb/Z2nsbn1b/yo1oICycSsbYbllzTtZtQjEOp4vKmI0UExZBWmlfT/lL9\n"
	"UUx6K1TFT/RQPrqOOxIaMS7CyaAJ/sAMHLtTNpWe8smnT03S7wWTLBSnVmFL3XsG\n"
	"1/l7bDJnxsBerBgA3706jMiQs9+g2Vn2OLkc+QIDAQABAoIBAGff3C+NZcIpC2N/\n"
	"AhQ/ziy+HQRZzOh4djmeynglweLH3osn7f2+wQviGLASBLdy4ZMsaGcJGmnlsJHL\n"
	"alBngDlRf62Dnf12X/JLKSVfmt/GxKuIHtN1dPghL/ecpBuGsyofDreVUs5Not38\n"
	"AyrVgO3f9llrXge0JhCBZJJD+Z4PY0hM2MXTzw1UgIxexnCpgDSjIHMJh5hiCrdG\n"
	"4MrvEBPche2bI8FLBJtMnuc924QC1JZITM7xrk8vU7NBSwtkzBu8Ciku+EkLA8Va\n"
	"nPbMcRohBopyby8zDXES4keh+E2l1wpENx5e3qh+U9VBSvVlbhq9+ZPG6NDeAMch\n"
	"YmZ6DAECgYEA6jo1BX/eRzlCig+GP0T8PGVJDFfgbUWtOc1uXJHQjpS5RosviPgd\n"
	"MnYIeb+K4+w9hrT/jK84cUpV7dpsWkhb20jUoiNgXMb0isiZePE5OITeGtGI/zlJ\n"
	"AT0RwUFVLteYvF8zu58453qQ5u2qyEFCCSsEdtnlWmwZW1f5R2mEAfECgYEA04UW\n"
	"Zt9RS+wLXpF3PZWk0cM7L34dA2GsIMkjLrtOarfgR4djTMi5lDwaaMLbcz+rJxXD\n"
	"qya3xgjHKS7uJuR/P5sF8OI/kgaa3mapNQP3MD8fFltopJSxS7KIQqx6a6GOIVZf\n"
	"gP/ibR1gjgnHRy/4lXwosWeLnQr/9QGB6ouyQ4kCgYAsIo2tHJwItaxpEWXNdDVH\n"
	"OBqcnc5nKLLsal46SSuQQkvrE/0ABSiTQpR0RHhqXDB3upFQtA+hoU0xxW+XT30n\n"
	"g8C1UI8uzDp2EDiDBokusjKbwRHcbbHo7tXyoVnouq1ICXRZDTaOv5SgPvZoR4um\n"
	"6Jktv/8sm6Pnh1ssbqB2MQKBgQCekQTMNdmSGvAjAtXrGwWmIr95yQcjA9Ov+Fkh\n"
	"rVUJ97JwrPQqGcfVcoExy/ILoc1CzbQT2ECoeugi3YW3LlCedC6t+E5DwCPVWgy7\n"
	"K6/hQVCix//YcYfAAaTYpshXa5NLNp7969Xoir9Ze8cifLnUBnHTHJazMg3TtD+a\n"
	"fwMyUQKBgGurIMPT4lqniO9pS/lkL+aljyapJKX0m4wVyAVzg/PaRs7tnDQK3pmt\n"
	"lI8oHd7/4/fIxxZq8LSqN2R3Lb+wqPkL+ZJe+e03i8ljt/EjAOkEX9e+NBh1ms4s\n"
	"l0zdkoTgNKpTsfNe7zsQCAkSa8jR4CuTNTG4yzjFMxeBVHKQiuph\n"
	"-----END RSA PRIVATE KEY-----\n";

inline const char kFuzzCertPem[] =
	"-----BEGIN CERTIFICATE-----\n"
	"MIIDKTCCAhGgAwIBAgIUGVqGvpZuO/2NY02PssCfK2VI9fEwDQYJKoZIhvcNAQEL\n"
	"BQAwLTErMCkGA1UEAxMiY3JpdXNlYyBmdXp6IHRlc3Qga2V5IChub3Qgc2VjcmV0\n"
	"KTAgFw0yNjExMjIxMzA1NThaGA85OTk5MTIzMTIzNTk1OVowLTErMCkGA1UEAxMi\n"
	"Y3JpdXNlYyBmdXp6IHRlc3Qga2V5IChub3Qgc2VjcmV0KTCCASIwDQYJKoZIhvcN\n"
	"AQEBBQADggEPADCCAQoCggEBAMGHvnA0UlJu1f9CtEcLQR/vxN1oZnyERRDczkVm\n"
	"1YCQ3WFV060vcRXbHu5v0fUcEfnuJurClju8bDrkFWUk29mz6WciYE5l3mk6mItU\n"
	"XWH/rtsfVyAceTMa5ifMgENh+i8PJMk+Mq3aR+4PQy3iKOVmNaHPYYsbZ/WTC9h4\n"
	"uLGIEWjHRK8oRj5Opm/2dp7G59W/8qNaCAsnErG2G5Zc07WbUIxDqeLypiNFBMWQ\n"
	"VppX0/5S/VFMeitUxU/0UD66jjsSGjEuwsmgCf7ADBy7UzaVnvLJp09N0u8FkywU\n"
	"p1ZhS917Btf5e2wyZ8bAXqwYAN+9OozIkLPfoNlZ9ji5HPkCAwEAAaM/MD0wDAYD\n"
	"VR0TAQH/BAIwADAOBgNVHQ8BAf8EBAMCBaAwHQYDVR0OBBYEFJm9Ve3VJVXxUfgK\n"
	"73N2LFjkgFrFMA0GCSqGSIb3DQEBCwUAA4IBAQB0/p39f9S+BeptIktoqbAh5Tb0\n"
	"lXXMoSHhKv/OFWUe+qGj2F72gqA36OY4FGfYAcb8DD10hh4GOsjiyoFV2ACgDD1o\n"
	"c3DqhbPNQMe/5dPlYXMAZHdC+My3rNWhYRL4YyHxiNbU1FT3NeHRfBofXSOhoRNO\n"
	"mK6Qw3B+2XXOTLbvhdHmZUXhnqSEN7Ktv8et+LfOat6TLr6ELfWgz21K3Zj8tLTf\n"
	"qJ8z3PMG3B+zU8pDStP6qsT/kHwJ1lAQrITPZYjmf4ByM2ko7W08b62zpE/TABgl\n"
	"h8wa2sQsPLKBDl4cI9LRDtkjGGnCR3cJOT+w3ljHoTuTi+V7zPCYq1GGdJUz\n"
	"-----END CERTIFICATE-----\n";
