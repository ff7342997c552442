-- The demo's tables, run at every site before the sites are joined
-- (tables and functions do not travel by replication; rows do).

CREATE TABLE customer (id bigint PRIMARY KEY, name text, city text);

CREATE TABLE orders (order_id bigint PRIMARY KEY,
                     customer_id bigint NOT NULL REFERENCES customer,
                     amount numeric(10,2),
                     written_at text DEFAULT sor.local_site());

-- A customer and their orders are one record of domain "customer", named
-- by the customer id; paris owns every customer without an entry of its own.
SELECT sor.register_table('customer', 'id', 'customer', default_site => 'paris');

SELECT sor.register_table('orders', 'customer_id', 'customer');

-- A command handler: adds an order.
CREATE FUNCTION add_order(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO orders (order_id, customer_id, amount)
    VALUES ((p->>'order_id')::bigint, (p->>'customer_id')::bigint,
            (p->>'amount')::numeric);
END
$$;

-- For the demo's listings: the customers, their owners and their orders.
CREATE VIEW customer_orders AS
    SELECT c.id, c.name, c.city, sor.owner_of('customer', c.id::text) AS owner,
           o.order_id, o.amount, o.written_at
      FROM customer c LEFT JOIN orders o ON o.customer_id = c.id;
