# TLS to the broker (docs/node.md, "TLS"): the broker's certificate must be signed by the CA
# config.json pins (broker.ca) and name the broker (broker.server_hostname, else broker.host),
# or the node does not connect. Imported only by a node whose broker.tls is true: the bytecode
# costs the others no heap.
import binascii

from espcam.config import ConfigError

BEGIN = "-----BEGIN CERTIFICATE-----"
END = "-----END CERTIFICATE-----"


class TLSError(OSError):
    # A handshake that failed: the broker's certificate refused, or the link broken in the
    # middle of it. The loop backs off and tries again, as for any broker failure.
    pass


def ca_text(broker):
    # broker.ca: the PEM text itself, or the name of a file on the board holding it.
    ca = broker["ca"]
    if BEGIN in ca:
        return ca
    try:
        with open(ca) as f:
            return f.read()
    except OSError:
        raise ConfigError("broker.ca: no file %r on the board (give the CA certificate's PEM "
                          "text, or the name of a file holding it)" % ca)


def certificates(pem):
    # Every certificate of a PEM text, as DER. mbedtls reads DER on every port, PEM only where
    # the firmware was built with its PEM parser (the unix port here was not), and MicroPython
    # before 1.23 documents a single DER certificate.
    out = []
    i = pem.find(BEGIN)
    while i >= 0:
        j = pem.find(END, i)
        if j < 0:
            raise ConfigError("broker.ca: certificate %d has no END line" % (len(out) + 1))
        try:
            out.append(binascii.a2b_base64(pem[i + len(BEGIN):j]))
        except ValueError:
            raise ConfigError("broker.ca: certificate %d is not base64" % (len(out) + 1))
        i = pem.find(BEGIN, j)
    if not out:
        raise ConfigError("broker.ca holds no certificate (no %s line)" % BEGIN)
    return out


def reason(e):
    # mbedtls says why on several lines ("\nThe certificate is not correctly signed by the
    # trusted CA\n"); an OSError from the socket has only a number.
    if e.args and isinstance(e.args[0], str):
        return "; ".join(x for x in e.args[0].split("\n") if x)
    return repr(e)


def wrapper(broker):
    # The `wrap` of the MQTT client (mqtt.MQTT): made once, at start-up, so that the parsed CA
    # lies at the bottom of the heap; each connection then costs only its own session.
    # ConfigError for what retrying cannot mend (no ssl module, a CA the firmware refuses).
    try:
        import ssl
    except ImportError:
        raise ConfigError("broker.tls: this firmware has no ssl module")
    ders = certificates(ca_text(broker))
    host = broker.get("server_hostname") or broker["host"]
    if hasattr(ssl, "SSLContext"):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.verify_mode = ssl.CERT_REQUIRED
        for d in ders:
            try:
                try:
                    ctx.load_verify_locations(cadata=d)
                except TypeError:
                    # MicroPython 1.21 and 1.22: a C method that takes the data positionally.
                    ctx.load_verify_locations(d)
            except ValueError as e:
                raise ConfigError("broker.ca: the firmware refused it: %s" % reason(e))
        ders = None

        def wrap(sock):
            try:
                return ctx.wrap_socket(sock, server_hostname=host)
            except Exception as e:
                raise TLSError("TLS with %s refused or broken: %s" % (host, reason(e)))
        return wrap

    # MicroPython 1.20: no SSLContext; wrap_socket checks the certificate against one DER CA.
    # Older firmware checks nothing: refused at once, or at the first connect (TypeError).
    if not hasattr(ssl, "CERT_REQUIRED"):
        raise ConfigError("broker.tls: this firmware's ssl cannot check the broker's "
                          "certificate (MicroPython 1.20 or later can)")
    ca = ders[0]
    ders = None

    def wrap_old(sock):
        try:
            return ssl.wrap_socket(sock, server_hostname=host, cert_reqs=ssl.CERT_REQUIRED,
                                   cadata=ca)
        except TypeError:
            raise TLSError("TLS: this firmware's ssl cannot check the broker's certificate "
                           "(MicroPython 1.20 or later can)")
        except Exception as e:
            raise TLSError("TLS with %s refused or broken: %s" % (host, reason(e)))
    return wrap_old
